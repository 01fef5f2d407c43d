"""Files that ship with the package: the judge prompt templates (`prompts/`) and configs (`configs/`)."""
