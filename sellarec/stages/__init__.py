"""Pipeline stages: each turns its inputs and sub-config into a stage output, never writing files."""
