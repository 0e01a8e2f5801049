"""Model families: the BLIP captioner and ITM filter, the DFN scorer, tiny configs."""
