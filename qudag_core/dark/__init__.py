"""Dark addresses (self-certifying .dark names), descriptors and the private resolver.
Sans-IO; see docs/dark.md."""
