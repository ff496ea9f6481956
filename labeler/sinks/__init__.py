"""Writers of annotation records."""
