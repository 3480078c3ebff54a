"""Knowledge distillation: losses and the one training loop every strategy plugs into."""
