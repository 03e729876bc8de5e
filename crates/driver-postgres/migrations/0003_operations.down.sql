-- Reverts 0003_operations: the records of operation ids go with their table.
DROP TABLE kernel_operations;
