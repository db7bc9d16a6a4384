"""Self-distillation of feature drafters (EAGLE heads) for a target model."""
