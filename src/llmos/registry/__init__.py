"""Model repositories: immutable versions, tags and content-addressed blobs.

(Nothing is imported here: ``llmos.registry.local`` and the rest are imported where
they are used, so importing a light part never loads the heavy ones.)"""
