"""The curation run: URL lists, downloads, decoding, CapFilt, concept matching,
balancing, selection and the run's steps."""
