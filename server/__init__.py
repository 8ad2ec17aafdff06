"""RobustFL ServerApp: shared-pool FedAvg, central robust evaluation, checkpoints, results."""
