-- Reverts 0004_generation: drivers of the earlier schema have no marker to check.
DROP TABLE kernel_generation;
