"""Analysis helpers: what a trained network's parameters and activations look like.

- `bn`: the affine parameters of normalization layers (BatchNorm's gamma and beta,
  EvoNorm's gamma and v): values per layer, histograms of |gamma|, the fraction of
  channels a layer has switched off (chapters 21, 28).
- `latents`: latent-variable analysis: the active/passive/mixed taxonomy of VAE latents,
  latent traversals (decoded image or series grids), 2-D embeddings (PCA/t-SNE)
  (chapters 03, 05, 14, 24, 27).

Submodules are imported explicitly (``from replibook.analysis import bn``).
"""
