"""offsite-host: the host side of Offsite (standard library and pynacl only)."""
