"""fathom.engine"""
