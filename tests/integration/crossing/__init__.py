"""A cluster's one crossing: federation through the east-west gateways."""
