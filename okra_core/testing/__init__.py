"""Test suites a plugin author runs against their own implementation of an okra_core
interface (they need pytest; okra_core itself never imports this package)."""
