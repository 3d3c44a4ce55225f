"""fathom.parallel"""
