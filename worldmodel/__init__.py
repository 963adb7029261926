"""The Genie-style world model: video tokenizer -> latent action model -> MaskGIT dynamics."""
