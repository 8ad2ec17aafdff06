"""RobustFL ClientApp: local adversarial training on one partition plus its share of G."""
