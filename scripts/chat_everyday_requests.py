"""Twenty everyday requests, written by hand, each naming the function it asks for (so that
"defines the requested name" can be checked). None comes from the standard library's docstrings."""

EVERYDAY_REQUESTS = [  # (request, requested function name)
    ("Write a function named reverse_string that reverses a string.", "reverse_string"),
    ("Write a function named read_csv_rows that reads a CSV file into a list of dicts.", "read_csv_rows"),
    ("Implement is_palindrome(text): return True if text reads the same backwards.", "is_palindrome"),
    ("Write a function named count_words that counts the words in a text file.", "count_words"),
    ("Write a Python function `factorial`. Return the factorial of n.", "factorial"),
    ("Implement fibonacci(n): return the n-th Fibonacci number.", "fibonacci"),
    ("Write a function named is_prime that tells whether a number is prime.", "is_prime"),
    ("Flatten a list of lists into one list. Call the function flatten.", "flatten"),
    ("Write a function named unique_items that removes duplicates from a list, keeping the order.", "unique_items"),
    ("Write a function named read_json that loads a JSON file and returns its data.", "read_json"),
    ("Implement write_lines(path, lines): write each string of lines to the file, one per line.", "write_lines"),
    ("Write a function named celsius_to_fahrenheit that converts a temperature in Celsius to Fahrenheit.",
     "celsius_to_fahrenheit"),
    ("Return the largest number in a list. Call the function max_of_list.", "max_of_list"),
    ("Write a Python function `merge_dicts`. Merge two dictionaries into a new one.", "merge_dicts"),
    ("Write a function named count_vowels that counts the vowels in a string.", "count_vowels"),
    ("Write a function named list_python_files that lists the .py files in a folder.", "list_python_files"),
    ("Implement parse_date(text): parse a date such as 2024-01-31 into a datetime.date.", "parse_date"),
    ("Write a function named word_frequencies that returns how often each word occurs in a text.",
     "word_frequencies"),
    ("Split a list into chunks of n items. Call the function chunk_list.", "chunk_list"),
    ("Write a Python function `file_size`. Return the size of a file in bytes.", "file_size"),
]
