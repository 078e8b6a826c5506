"""Model structure helpers: finding Transformer blocks and the linear modules inside them."""
