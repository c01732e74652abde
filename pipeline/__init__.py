"""gpf.pipeline"""
