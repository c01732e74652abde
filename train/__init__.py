"""gpf.train"""
