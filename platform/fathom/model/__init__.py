"""fathom.model"""
