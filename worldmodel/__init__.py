"""The Genie-style world model: video tokenizer -> latent action model -> MaskGIT dynamics.

"The anchor", wherever this code says it, is the small Genie implementation this model follows and
is checked against: tinyworlds, https://github.com/AlmondGod/tinyworlds. Its configs are the
reference hyperparameters (worldmodel/config.py's defaults), its parameter counts the fidelity
check, and its HDF5 layout the dataset format; a switch "off in the anchor" keeps its behaviour.
"""
