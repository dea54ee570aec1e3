"""Numbers derived from attention: strength, CLS vectors, binarised maps, patterns, autoencoder, layouts.

Modules: `strength` (k-hop strength, entropy, attention distance), `cls` (CLS vectors), `binary` (binarised
maps, packed as the store keeps them), `patterns` (pattern labels), `autoencoder` (pattern latents), `layout`
(tSNE), `consistency` (head kinds), `proxy` (the gradient proxy against exact pruning).
"""
