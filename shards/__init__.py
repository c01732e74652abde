"""gpf.shards"""
