-- The schema of the bundled shop database (icpo_eval/families/database_shop.py), written by
-- hand: edit it here. Its comments name the allowed values for the model, which reads the
-- table definitions in its system prompt. The rows are in shop.sql, generated.
CREATE TABLE customers (
    customer_id INTEGER PRIMARY KEY,
    first_name TEXT NOT NULL,
    last_name TEXT NOT NULL,
    email TEXT NOT NULL UNIQUE,
    city TEXT NOT NULL,
    country TEXT NOT NULL,      -- full English name, e.g. 'Germany', 'United States'
    signup_date TEXT NOT NULL,  -- ISO date 'YYYY-MM-DD'
    loyalty_tier TEXT NOT NULL  -- 'bronze', 'silver' or 'gold'
);
CREATE TABLE suppliers (
    supplier_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    country TEXT NOT NULL
);
CREATE TABLE products (
    product_id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    category TEXT NOT NULL,     -- 'Electronics', 'Books', 'Kitchen', 'Garden', 'Toys', 'Sports'
    price REAL NOT NULL,        -- current price in dollars
    stock INTEGER NOT NULL,     -- units in the warehouse; 0 means out of stock
    supplier_id INTEGER NOT NULL REFERENCES suppliers(supplier_id)
);
CREATE TABLE orders (
    order_id INTEGER PRIMARY KEY,
    customer_id INTEGER NOT NULL REFERENCES customers(customer_id),
    order_date TEXT NOT NULL,   -- ISO date 'YYYY-MM-DD'
    status TEXT NOT NULL        -- 'pending', 'shipped', 'delivered' or 'cancelled'
);
CREATE TABLE order_items (
    order_id INTEGER NOT NULL REFERENCES orders(order_id),
    product_id INTEGER NOT NULL REFERENCES products(product_id),
    quantity INTEGER NOT NULL,
    unit_price REAL NOT NULL,   -- price paid per unit, in dollars
    PRIMARY KEY (order_id, product_id)
);
