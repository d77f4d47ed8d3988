"""Weight sync, learner to generators: bucket plans, transports, the generator's receiver, and the
driver's manager (``WeightSync.push(version)``). See :mod:`weight_sync.manager`."""
