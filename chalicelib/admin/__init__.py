"""`offsite-admin`: the admin's workstation tool (init, hosts, windows, snapshots, cost).

It runs with the admin's own AWS credentials: the admin API is called with SigV4 (the routes
are IAM-authorised), and `init` writes the key parameters and deploys with boto3. Nothing here
runs in Lambda but usage.py, which is pure (chalicelib/window_cost.py: the dashboard's cost).
"""
