"""gpf.model"""
