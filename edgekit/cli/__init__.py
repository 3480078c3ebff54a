"""The edgekit command line. Heavy imports (torch, transformers) happen inside command bodies."""
