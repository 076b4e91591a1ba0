"""The Label Studio layer: labelling-config parsing, result encoding and decoding, image loading,
and the ML-backend server. Submodules are imported where needed so that importing this package
stays cheap."""
