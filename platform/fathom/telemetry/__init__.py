"""fathom.telemetry"""
