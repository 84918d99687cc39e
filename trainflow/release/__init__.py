"""The deployment package: metadata, format and verification, publishing, the registry, the loader, lineage, the model card and retention."""
