"""bulkformer.model"""
