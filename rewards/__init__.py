"""Tasks and graders: math answers, code in sandboxes, the reward actor pool."""
