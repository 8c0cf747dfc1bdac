"""The archive instance's boot: its user-data (userdata.py) and the script it runs (boot.sh)."""
