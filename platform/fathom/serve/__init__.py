"""fathom.serve"""
