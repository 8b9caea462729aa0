mod core_example;
