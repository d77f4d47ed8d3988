"""The DeepSpeed ZeRO learner group, the SCoRe objectives, reference policy, checkpoints, weight publishing."""
