-- Whether the connection has a table or view called $view (optional steps add views).
SELECT count(*) > 0 FROM information_schema.tables WHERE table_name = $view;
