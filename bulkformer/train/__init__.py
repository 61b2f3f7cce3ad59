"""bulkformer.train"""
