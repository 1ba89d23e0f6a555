"""When and how often steps run: dispatch, leases, slot holding, admission, recovery, budget."""
