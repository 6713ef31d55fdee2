"""Group statistics: the network-based statistic and longitudinal tests."""
