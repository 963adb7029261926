"""The bench harness: suite config, run matrix, executors, store, statistics, gate."""
