"""fathom.tenancy"""
