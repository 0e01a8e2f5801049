"""The synthetic web: scenes with known truth, their images and alt-text, a loopback server."""
