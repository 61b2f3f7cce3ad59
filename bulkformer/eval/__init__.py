"""bulkformer.eval"""
