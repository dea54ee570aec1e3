"""Numbers derived from attention: strength, CLS vectors, binarised maps, patterns, autoencoder, layouts.

Modules: `strength` (k-hop strength, entropy, attention distance), `cls` (CLS vectors, binarisation),
`patterns` (pattern labels), `autoencoder` (pattern latents), `layout` (tSNE).
"""
