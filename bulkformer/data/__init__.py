"""bulkformer.data"""
