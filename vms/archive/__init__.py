"""The archive: relayed segments stored on disk and indexed in the store."""
