"""The tiny "shapes" unCLIP: procedural data, training, export and quality checks."""
