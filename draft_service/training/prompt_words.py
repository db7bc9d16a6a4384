"""Vocabulary and request templates for the distillation prompt factory (``prompts.py``).

Pure data, written for this project (nothing here is downloaded or copied from an evaluation
set). Templates use ``{slot}`` fields resolved by ``prompt_templates.fill``: a slot named after a key of
``SLOTS`` draws from that list, a trailing digit draws a second, distinct value from the same list
(``{name2}``), and ``{task:s}`` puts the first verb of an infinitive phrase in the third person
("reverse a string" -> "reverses a string").
"""
from __future__ import annotations

# --- topics: what passages, explanations and small talk are about --------------------------------
# Grouped by domain so the spread over subjects is visible; flattened into TOPICS below.
TOPIC_GROUPS: dict[str, tuple[str, ...]] = {
    "everyday life": (
        "keeping a small apartment tidy", "morning routines", "sharing a flat with roommates",
        "choosing a good mattress", "saving energy at home", "doing laundry efficiently",
        "planning a birthday party", "living without a car", "decluttering a wardrobe",
        "dealing with noisy neighbours", "grocery shopping on a budget", "caring for houseplants",
        "moving house", "reducing screen time", "making friends in a new city",
        "commuting by bicycle", "organising a family calendar", "keeping a journal",
        "buying second-hand furniture", "hosting a dinner for friends"),
    "science": (
        "photosynthesis", "how vaccines train the immune system", "the water cycle",
        "why the sky is blue", "how rainbows form", "plate tectonics",
        "the discovery of penicillin", "how batteries store energy", "the structure of DNA",
        "how magnets work", "black holes", "the speed of sound", "how bees make honey",
        "why leaves change colour", "the periodic table", "how the Moon causes tides",
        "microplastics in the ocean", "how the human eye sees colour", "static electricity",
        "the life cycle of a star"),
    "history": (
        "the building of the Great Wall of China", "the invention of the printing press",
        "the Apollo 11 Moon landing", "the fall of the Berlin Wall", "the Silk Road",
        "Roman aqueducts", "the Industrial Revolution", "the ancient Olympic Games",
        "the history of the bicycle", "the Rosetta Stone", "the Wright brothers' first flight",
        "the construction of the Panama Canal", "the Vikings as sailors and traders",
        "the history of paper money", "the Renaissance in Florence",
        "the invention of the telephone", "the library of Alexandria",
        "the history of the postal service", "the first electronic computers",
        "the signing of the Magna Carta"),
    "geography": (
        "the Amazon rainforest", "the Sahara desert", "the fjords of Norway", "the Nile river",
        "volcanoes in Iceland", "the Great Barrier Reef", "the Himalayas",
        "the Mediterranean climate", "the Dead Sea", "the Atacama desert",
        "the islands of Indonesia", "the Alps", "Lake Baikal", "the Mississippi River",
        "the Galapagos Islands", "the steppes of Central Asia", "the canals of Venice",
        "the geysers of Yellowstone", "monsoon seasons in South Asia", "the Andes mountains"),
    "technology": (
        "electric cars", "smart home devices", "how GPS works", "5G mobile networks",
        "solar panels on rooftops", "3D printing", "online privacy", "password managers",
        "cloud storage", "the history of the smartphone", "how search engines rank pages",
        "virtual reality headsets", "e-readers versus paper books", "the rise of video calls",
        "cybersecurity for small businesses", "recycling old electronics", "how Wi-Fi works",
        "delivery drones", "wearable fitness trackers", "open-source software"),
    "programming": (
        "version control with Git", "writing readable code", "unit testing", "code reviews",
        "learning Python as a first language", "debugging techniques",
        "how web APIs let apps talk to each other", "relational databases",
        "frontend and backend development", "technical debt", "pair programming",
        "documenting a software project", "continuous integration", "regular expressions",
        "object-oriented programming", "functional programming", "naming variables well",
        "how compilers work", "software containers", "working with JSON data"),
    "food": (
        "the history of pizza", "fermented foods", "Japanese ramen", "cooking with lentils",
        "olive oil production", "street food in Mexico", "how cheese is made",
        "the origins of chocolate", "meal prepping for the week", "spices in Indian cooking",
        "vegetarian cooking", "mint tea in Morocco", "baking bread at home", "coffee roasting",
        "seasonal vegetables in winter", "French pastries", "reducing food waste",
        "the Mediterranean diet", "homemade pasta", "the history of ice cream"),
    "travel": (
        "travelling by night train", "backpacking in South America", "visiting Kyoto in spring",
        "travelling on a small budget", "a road trip along the coast", "packing light",
        "staying in hostels", "learning a few words before a trip", "jet lag",
        "travelling with children", "ecotourism", "visiting national parks",
        "a weekend in Lisbon", "travel insurance", "cycling holidays", "house swapping",
        "avoiding tourist traps", "solo travel", "river cruises", "island hopping by ferry"),
    "work": (
        "working from home", "running effective meetings", "writing a strong CV",
        "preparing for a job interview", "giving useful feedback", "the four-day work week",
        "managing a remote team", "time management at work", "starting a small business",
        "freelancing", "asking for a promotion", "onboarding new employees", "avoiding burnout",
        "networking events", "workplace safety", "open-plan offices",
        "mentoring junior colleagues", "setting goals for the year", "switching careers",
        "good customer service"),
    "health": (
        "getting enough sleep", "the benefits of walking", "staying hydrated",
        "stretching after exercise", "managing stress", "healthy breakfasts",
        "the importance of sunscreen", "good posture at a desk", "mindfulness meditation",
        "cutting down on sugar", "regular health check-ups", "cycling for fitness",
        "strength training for beginners", "seasonal allergies", "healthy snacks for work",
        "the effects of caffeine", "washing hands properly", "protecting your hearing",
        "eye strain from screens", "building a daily exercise habit"),
    "hobbies": (
        "birdwatching", "knitting", "amateur astronomy", "chess", "urban sketching",
        "gardening on a balcony", "learning the piano", "board game nights",
        "photography for beginners", "rock climbing", "baking as a hobby", "collecting stamps",
        "pottery", "bullet journaling", "running a book club", "learning to juggle",
        "fishing", "model railways", "calligraphy", "geocaching"),
    "animals": (
        "honeybees", "octopuses", "migrating birds", "elephants", "dolphins", "the red fox",
        "emperor penguins", "house cats", "the life of ants", "sea turtles", "owls", "wolves",
        "hummingbirds", "koalas", "the monarch butterfly", "horses", "bats", "garden snails",
        "whale songs", "hedgehogs"),
    "arts": (
        "impressionist painting", "the history of jazz", "street art",
        "learning to draw portraits", "silent films", "classical ballet", "poetry slams",
        "mosaic art", "photography as an art form", "Gothic cathedrals", "opera",
        "graphic novels", "folk music", "improvised theatre", "bookbinding",
        "museum audio guides", "film soundtracks", "origami", "Japanese woodblock prints",
        "public sculptures"),
    "sports": (
        "marathon training", "the rules of basketball", "the Tour de France",
        "swimming technique", "yoga", "the history of football", "tennis",
        "cross-country skiing", "table tennis", "team sports for children", "the Olympic Games",
        "surfing", "cricket", "martial arts", "mountain hiking", "rowing", "bouldering",
        "sports nutrition", "esports", "ultimate frisbee"),
    "environment": (
        "recycling", "composting", "trees in cities", "renewable energy", "electric buses",
        "saving water", "pollination", "plastic-free shopping", "wind farms",
        "protecting wetlands", "air quality in cities", "community gardens", "fast fashion",
        "rewilding", "car-free city centres", "seed libraries", "coral bleaching",
        "light pollution", "reusable packaging", "urban biodiversity"),
    "money": (
        "making a monthly budget", "saving for a holiday", "compound interest",
        "the basics of investing", "emergency funds", "credit scores", "paying off debt",
        "comparing bank accounts", "cheap hobbies", "tipping customs around the world",
        "subscription services", "buying versus renting a home", "pocket money for children",
        "how inflation affects savings", "choosing insurance", "second-hand shopping",
        "crowdfunding", "splitting bills with friends", "saving for retirement",
        "negotiating a salary"),
    "education": (
        "learning a second language", "online courses", "study techniques",
        "homework for young children", "public libraries", "learning by teaching others",
        "school uniforms", "taking good notes", "exam stress", "reading aloud to children",
        "learning mathematics", "studying abroad", "lifelong learning", "apprenticeships",
        "group projects", "the Pomodoro technique", "memorising vocabulary", "school gardens",
        "coding clubs for kids", "debate clubs"),
    "space": (
        "the International Space Station", "Mars rovers", "the phases of the Moon",
        "solar eclipses", "the rings of Saturn", "how astronauts train", "satellites",
        "meteor showers", "the search for exoplanets", "the Hubble Space Telescope",
        "the Sun", "comets", "the Milky Way", "space debris", "Valentina Tereshkova",
        "rocket launches", "the northern lights", "telescopes for beginners",
        "the moons of Jupiter", "the Voyager probes"),
}
TOPICS: tuple[str, ...] = tuple(t for group in TOPIC_GROUPS.values() for t in group)

# --- people, places, languages --------------------------------------------------------------------
NAMES = (
    "Alice", "Omar", "Priya", "Lucas", "Mei", "Tom", "Sofia", "Kwame", "Elena", "Jonas", "Aisha",
    "Mateo", "Hana", "Daniel", "Fatima", "Leo", "Ingrid", "Ravi", "Chloe", "Yusuf", "Nora",
    "Diego", "Amara", "Felix", "Lena", "Hiroshi", "Zara", "Ben", "Carmen", "Ivan", "Maya",
    "Samuel", "Olga", "Tariq", "Julia", "Kofi", "Emma", "Rafael", "Sara", "Noah")
SURNAMES = (
    "Garcia", "Nguyen", "Smith", "Kowalski", "Okafor", "Rossi", "Schmidt", "Tanaka", "Dubois",
    "Silva", "Patel", "Johansson", "Murphy", "Haddad", "Costa", "Novak", "Kim", "Fischer",
    "Moreau", "Lopez")
CITIES = (
    "Lisbon", "Kyoto", "Toronto", "Nairobi", "Oslo", "Buenos Aires", "Melbourne", "Prague",
    "Seoul", "Cape Town", "Edinburgh", "Vienna", "Mexico City", "Istanbul", "Copenhagen", "Hanoi",
    "Barcelona", "Montreal", "Dublin", "Marrakech", "Singapore", "Budapest", "Lima", "Helsinki",
    "Reykjavik", "Bangkok", "Athens", "Krakow", "Vancouver", "Porto", "Munich", "Florence",
    "Seville", "Lyon", "Amsterdam", "Stockholm", "Chicago", "Boston", "Wellington", "Tallinn")
COUNTRIES = (
    "Japan", "Brazil", "Canada", "Kenya", "Norway", "Argentina", "Australia", "Egypt", "India",
    "Mexico", "Portugal", "Vietnam", "Peru", "Morocco", "Finland", "Turkey", "Chile", "Greece",
    "Poland", "Thailand", "Ireland", "New Zealand", "South Korea", "Nigeria", "Spain", "Sweden",
    "Italy", "Germany", "Indonesia", "Colombia", "Switzerland", "Iceland", "Ghana", "Austria",
    "the Netherlands", "Denmark", "Hungary", "Malaysia", "Ethiopia", "Cuba")
LANGUAGES = ("French", "Spanish", "German", "Italian", "Portuguese")
DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
CLOCK = ("7:30", "8:00", "8:45", "9:15", "10:00", "11:30", "12:15", "13:00", "14:30", "15:45",
         "16:00", "17:30", "18:15", "19:00", "20:30")
SMALL_N = ("two", "three", "four", "five")
RELATIVES = ("sister", "brother", "cousin", "grandmother", "uncle", "aunt", "neighbour",
             "best friend", "colleague", "flatmate")
JOBS = ("nurse", "teacher", "software engineer", "baker", "architect", "pilot", "librarian",
        "electrician", "journalist", "chef", "veterinarian", "accountant", "gardener",
        "photographer", "pharmacist", "translator", "carpenter", "firefighter")

# --- chat -----------------------------------------------------------------------------------------
ACTIVITIES = (
    "learning a new language", "running a first 10k race", "keeping houseplants alive",
    "saving money on groceries", "working from home", "studying for exams", "public speaking",
    "writing clear emails", "sleeping better", "starting a vegetable garden",
    "taking better photos with a phone", "reviewing a colleague's code", "managing a small team",
    "training a puppy", "cooking for one", "travelling on a budget", "reading more books",
    "staying focused while studying", "learning the guitar", "keeping a tidy desk",
    "writing unit tests", "planning a wedding", "running a remote meeting", "learning to swim",
    "drawing every day", "eating more vegetables", "organising digital photos",
    "looking after an elderly parent", "preparing for a long flight", "writing a novel",
    "managing personal finances", "getting back into exercise", "keeping a bullet journal",
    "learning to touch type", "hosting a board game night", "volunteering locally")
HOWTO = (
    "brew coffee with a French press", "remove a coffee stain from a cotton shirt",
    "fix a flat bicycle tyre", "set up a Python virtual environment",
    "back up the photos on my phone", "write a cover letter", "ask my manager for a raise",
    "season a cast iron pan", "tie a bowline knot", "make fluffy pancakes", "start meditating",
    "negotiate a lower rent", "plan a monthly budget", "prepare for a phone interview",
    "make my passwords more secure", "repot a plant", "cook rice on the stove",
    "boil an egg so the yolk stays soft", "iron a dress shirt", "clean a laptop keyboard",
    "sharpen a kitchen knife", "write a good commit message", "stop procrastinating",
    "learn to juggle three balls", "make cold brew coffee", "keep bread fresh for longer",
    "get rid of fruit flies in the kitchen", "speed up a slow laptop", "start running",
    "plan a surprise party", "read a nutrition label", "change a car tyre",
    "write a polite complaint email", "choose a good watermelon", "fall asleep faster",
    "care for a sourdough starter", "make a simple tomato sauce", "learn to whistle")
DECISIONS = (
    "adopting a cat", "buying a used car", "moving to a new city", "starting a small business",
    "changing careers", "buying an electric bike", "renting my first apartment",
    "learning to code", "going back to university", "signing up for a gym membership",
    "taking a gap year", "buying a house", "accepting a job offer abroad",
    "getting a second pet", "buying a 3D printer", "switching to a standing desk",
    "starting a podcast", "moving in with a partner", "buying a piano",
    "joining a start-up", "getting chickens for the garden", "taking out a loan")
TRIPS = (
    "a week-long beach holiday", "a ski trip", "a camping weekend by a lake", "a long-haul flight",
    "a winter city break", "a week-long cycling tour", "a summer music festival",
    "a business trip of three days", "a visit to a rainy country", "a sailing weekend",
    "a road trip with two children", "a backpacking trip in Southeast Asia")
BUSINESSES = (
    ("café", "specialty coffee and board games"), ("bookshop", "travel books and maps"),
    ("bike repair shop", "vintage bicycles"), ("food truck", "Korean street food"),
    ("flower shop", "dried flowers"), ("pet grooming salon", "nervous dogs"),
    ("tea room", "Japanese green teas"), ("cleaning company", "eco-friendly products"),
    ("yoga studio", "classes for beginners"), ("bakery", "gluten-free pastries"),
    ("ice cream parlour", "unusual flavours"), ("software consultancy", "small charities"),
    ("hair salon", "curly hair"), ("juice bar", "green smoothies"),
    ("plant shop", "rare succulents"), ("tutoring service", "maths for teenagers"),
    ("pizza restaurant", "wood-fired pizza"), ("second-hand shop", "vintage clothing"))
# Kind and speciality stay paired (a bike shop specialising in smoothies would read oddly).
BUSINESS_SPECS = tuple(f"{kind} that specialises in {spec}" for kind, spec in BUSINESSES)
BUSINESS_FOCUS = tuple(f"{kind} focused on {spec}" for kind, spec in BUSINESSES)
POEM_FORMS = ("haiku", "limerick", "short poem", "four-line poem", "rhyming couplet")
POEM_TOPICS = (
    "morning fog", "a rainy train ride", "the first snow", "a lighthouse", "city lights at night",
    "a cup of coffee", "an old bicycle", "a sleepy cat", "spring rain", "a quiet library",
    "the sea at dawn", "a summer thunderstorm", "a forgotten umbrella", "a mountain lake",
    "the last day of school", "a busy kitchen", "a night sky full of stars", "a garden snail",
    "a long walk home", "a crowded market", "an empty beach in winter", "a paper boat")
SKILLS = (
    "handwriting", "chess game", "writing", "memory", "typing speed", "cooking",
    "time management", "Spanish vocabulary", "running endurance", "drawing", "posture",
    "listening skills", "negotiation skills", "focus", "photography", "singing voice")
FEELINGS = ("nervous", "overwhelmed", "unmotivated", "anxious", "stuck", "bored", "unsure")
SITUATIONS = (
    "starting a new job next week", "giving a presentation on Friday", "my exams next month",
    "moving to another country", "my first marathon", "a difficult conversation with a friend",
    "learning to drive", "my wedding speech", "a job interview tomorrow",
    "going back to work after a long break", "my thesis", "meeting my partner's parents")
OCCASIONS = (
    "a child's birthday party", "a company summer picnic", "a rainy Sunday at home",
    "a first date", "a family reunion", "a team-building day", "a retirement party",
    "a neighbourhood street party", "a school fundraiser", "a housewarming party")
RECIPIENTS = ("my neighbour", "a former teacher", "my team", "a colleague", "my landlord",
              "a friend", "my grandmother", "a customer", "my mentor", "the volunteers")
REASONS = ("helping me move house", "looking after my cat", "a thoughtful birthday gift",
           "covering my shift", "their advice on my CV", "organising the event",
           "a lovely dinner", "their patience during a busy month")

CHAT_TEMPLATES = (
    "What are {n} good habits for {activity}?",
    "Give me some practical tips for {activity}.",
    "I want to get better at {activity}. Where should I start?",
    "How do I {howto}?",
    "What is the easiest way to {howto}?",
    "Can you explain, step by step, how to {howto}?",
    "What should I think about before {decision}?",
    "What are the pros and cons of {decision}?",
    "Give me a short packing list for {trip}.",
    "What should I pack for {trip}?",
    "Suggest a name for a {business_spec}, and say why it works.",
    "Suggest {n} possible names for a {business_focus}.",
    "Write a {poem} about {poem_topic}.",
    "Tell me {n} interesting facts about {topic}.",
    "Explain {topic} to a ten-year-old.",
    "What are the most important things a beginner should know about {topic}?",
    "How can I improve my {skill}?",
    "I feel {feeling} about {situation}. Any advice?",
    "Give me {n} ideas for {occasion}.",
    "Plan a relaxed {n}-day trip to {city} for someone who likes food and walking.",
    "What would you recommend doing on a free afternoon in {city}?",
    "Write a short thank-you note to {recipient} for {reason}.",
    "Write a polite message to {recipient} declining an invitation to {occasion}.",
    "What questions should I ask myself before {decision}?",
    "Recommend {n} books or films for someone interested in {topic}.",
    "Give me a simple weekly plan for {activity}.",
    "What are common mistakes beginners make with {topic}?",
    "Write a short encouraging note for a friend who feels {feeling} about a big change at work.",
)

# --- passage requests: answers of 60-150 words that become stage-B source texts -------------------
PRODUCTS = (
    "a reusable water bottle", "noise-cancelling headphones", "a standing desk",
    "a handmade ceramic mug", "a solar phone charger", "a smart thermostat",
    "a lightweight hiking backpack", "a cast iron skillet", "an electric kettle",
    "a folding bicycle", "a bamboo toothbrush", "a wool winter hat", "a robot vacuum cleaner",
    "a beginner's watercolour set", "a waterproof phone case", "an ergonomic office chair",
    "a mechanical keyboard", "a pour-over coffee set", "a portable speaker", "a children's tent")
EVENTS = (
    "a fire drill next Tuesday", "the office moving to a new floor", "a charity bake sale",
    "a planned power outage on Saturday", "new opening hours starting next month",
    "a change to the parking rules", "a team day out", "a software update that needs a restart",
    "a community clean-up day", "a new recycling scheme", "the kitchen being renovated",
    "a free first-aid course", "a lost-and-found clear-out", "the lifts being serviced",
    "a quiz night for charity", "a new booking system for meeting rooms",
    "a water supply interruption", "a summer reading challenge", "a late-night opening",
    "a new bike shed")
PLACES = ("the office", "the community centre", "the school", "the gym", "the apartment building",
          "the public library", "the museum", "the swimming pool", "the town hall",
          "the sports club", "the coworking space", "the primary school")
AUDIENCES = ("the whole team", "new employees", "the residents", "parents", "customers",
             "the volunteers", "students", "club members", "the project group")
NEWS_EVENTS = (
    "a town opening its first public bike-sharing scheme",
    "a local school winning a robotics prize",
    "a new hiking trail opening in the hills", "a bakery celebrating its fiftieth anniversary",
    "volunteers planting a thousand trees", "a museum reopening after renovation",
    "a rare bird being spotted in a city park", "a small library getting a new reading room",
    "a night market starting in the old town", "a river being cleaned by local divers",
    "a village switching its street lights to LED",
    "a teenager building an app for the bus timetable",
    "a football club opening a team for older players", "a lost dog returning home after a week",
    "a community orchard producing its first harvest")
POLICIES = ("returns and refunds", "guest visits", "booking the meeting rooms", "pets",
            "noise after ten in the evening", "lost property", "bicycle parking", "late payments",
            "borrowing equipment", "cancellations", "working hours", "using the shared kitchen")
PASSAGE_TEMPLATES = (
    "Write a short paragraph about {topic}.",
    "Write a paragraph of about {words} words about {topic}.",
    "Write an informative paragraph for a general audience about {topic}, around {words} words.",
    "Write a short blog introduction about {topic}.",
    "Describe {topic} in one paragraph.",
    "Write a short, friendly email from {name} to {audience} about {event}.",
    "Write a brief email from {name} to a colleague, giving an update on a project about {topic}.",
    "Write a short notice for {place} announcing {event}.",
    "Write a product description for {product}, about {words} words.",
    "Write a short news item about {news}.",
    "Write a casual message to a friend about {topic}.",
    "Write a short encyclopedia-style entry about {topic}.",
    "Write a short biography of a fictional {job} named {name} {surname} who lives in {city}.",
    "Write a short policy for {place} about {policy}, in about {words} words.",
    "Write a short story opening set in {city}, about {words} words.",
    "Write a short review of a fictional restaurant in {city}.",
    "Write the minutes of a short team meeting about {event}.",
    "Write a short FAQ answer explaining {topic} to a newcomer.",
)
PASSAGE_WORDS = ("60", "80", "100", "120", "150")

# --- code -----------------------------------------------------------------------------------------
# Infinitive phrases, usable by any language ("Write a JavaScript function that {task:s}.").
CODE_TASKS = (
    "reverse a string", "check whether a string is a palindrome", "count the vowels in a string",
    "remove duplicates from a list while keeping the original order",
    "return the second largest number in a list", "flatten a list of lists",
    "merge two sorted lists into one sorted list", "count how often each word appears in a text",
    "check whether a number is prime", "compute the factorial of n recursively",
    "convert a temperature from Celsius to Fahrenheit",
    "capitalise the first letter of every word in a sentence",
    "find the longest word in a sentence", "group a list of words by their first letter",
    "split a list into chunks of size n", "rotate a list by k positions",
    "return the elements that two lists have in common",
    "transpose a matrix given as a list of rows", "convert a Roman numeral to an integer",
    "convert an integer to its binary representation without built-in helpers",
    "compute the greatest common divisor of two integers",
    "find all anagrams of a word in a list of words",
    "sort a list of records by a given field", "swap the keys and values of a dictionary",
    "merge two dictionaries, adding up the values of shared keys",
    "return the most common element of a list", "compute the running total of a list of numbers",
    "check whether two strings are anagrams", "count the digits of an integer",
    "return the weekday of a date given as YYYY-MM-DD",
    "generate a random password of a given length", "perform binary search on a sorted list",
    "sort a list with insertion sort", "return the n-th triangular number",
    "check whether the brackets in a string are balanced",
    "compress a string like 'aaabcc' into 'a3b1c2'",
    "find the missing number in a list that should contain 1 to n",
    "return all pairs of numbers in a list that add up to a target",
    "compute the median of a list of numbers",
    "format a number of seconds as hours, minutes and seconds",
    "convert a snake_case string to camelCase", "remove all punctuation from a string",
    "return the first character that does not repeat in a string",
    "sum the digits of a non-negative integer", "decide whether a year is a leap year",
    "find the largest sum of a contiguous sublist",
    "truncate a string to n characters and add '...'",
    "return the prime numbers below n using the sieve of Eratosthenes",
    "compute the dot product of two vectors", "check whether a list is sorted",
    "return the k largest numbers in a list", "remove empty values from a dictionary",
    "count the uppercase letters in a string",
    "build a frequency table of the characters in a text",
    "check whether a string is a valid IPv4 address", "convert a list of pairs into a dictionary",
    "return the indices of all occurrences of a value in a list",
    "interleave two lists element by element", "compute the average word length in a sentence",
    "mask all but the last four digits of a card number",
    "round a price to the nearest five cents", "convert minutes into hours and minutes",
    "validate that a password has at least eight characters, a digit and a capital letter",
    "find the longest common prefix of a list of strings", "count the words in a sentence",
    "return the Collatz sequence starting from n", "check whether a number is a perfect square",
    "convert a hex colour like '#ff8800' to an RGB tuple",
    "shuffle a list without a library shuffle",
)
# Only sensible in Python (they name Python features).
PY_ONLY_TASKS = (
    "read a CSV file and return its rows as dictionaries",
    "write a list of dictionaries to a JSON file",
    "memoise a slow function with a decorator",
    "yield the lines of a large file lazily with a generator",
    "time how long another function takes with a decorator",
    "parse command-line arguments with argparse",
    "retry a function up to three times when it raises an exception",
    "walk a directory tree and list every file larger than 1 MB",
)
PY_TEMPLATES = (
    "Write a Python function that {task:s}.",
    "Write a Python function that {task:s}. Include type hints and a docstring.",
    "Write a short Python function to {task}, and show an example call.",
    "How would I {task} in Python?",
    "Implement a function in Python that {task:s}. Keep it simple and readable.",
    "Write a Python function that {task:s}, and explain its time complexity.",
    "Write a Python function that {task:s}, and validate its input.",
    "Write pytest unit tests for a function that {task:s}.",
    "Give me a Python snippet that {task:s}, with comments.",
    "Write a Python function called {fname} that {task:s}.",
)
OTHER_LANG_TEMPLATES = (
    "Write a {lang} function that {task:s}.",
    "How do I {task} in {lang}?",
    "Write a {lang} function to {task}, with a short usage example.",
)
OTHER_LANGS = ("JavaScript", "JavaScript", "TypeScript", "Java", "Go", "Rust", "C#")
FUNCTION_NAMES = ("solve", "process", "helper", "compute", "transform", "check", "run", "handle")
CLASSES = (
    ("BankAccount", "supports deposits, withdrawals and a balance check, and refuses overdrafts"),
    ("Stack", "implements push, pop, peek and is_empty"),
    ("Queue", "is backed by two stacks and supports enqueue and dequeue"),
    ("TodoList", "lets you add, complete and list tasks"),
    ("Rectangle", "stores width and height and computes its area and perimeter"),
    ("Inventory", "tracks item quantities and warns when stock runs low"),
    ("Timer", "works as a context manager and prints the elapsed time"),
    ("LRUCache", "keeps a fixed number of items and evicts the least recently used one"),
    ("Temperature", "stores a value in Celsius and exposes Fahrenheit and Kelvin properties"),
    ("ShoppingCart", "adds items with prices and quantities and computes the total with tax"),
    ("Library", "lets members borrow and return books and lists overdue loans"),
    ("Matrix", "supports addition and multiplication of two matrices"),
    ("Student", "stores grades and computes the average and the best grade"),
    ("Playlist", "adds, removes and shuffles songs and reports the total duration"),
    ("RateLimiter", "allows at most n calls per second"),
    ("Vector2D", "supports addition, scaling and length"),
    ("Thermostat", "switches heating on and off around a target temperature"),
    ("ParkingLot", "tracks free spaces and issues tickets"),
)
CLASS_TEMPLATES = (
    "Write a Python class {cls} that {behaviour}.",
    "Create a Python class named {cls} that {behaviour}. Add a short usage example.",
    "Design a small Python class {cls} that {behaviour}, with docstrings.",
    "Write a JavaScript class {cls} that {behaviour}.",
)
# (table, columns, numeric column, grouping column, text column, date column)
SQL_TABLES = (
    ("orders", "id, customer_id, total, created_at", "total", "customer_id", "customer_id",
     "created_at"),
    ("employees", "id, name, department, salary, hired_on", "salary", "department", "name",
     "hired_on"),
    ("products", "id, name, category, price, stock", "price", "category", "name", None),
    ("books", "id, title, author, year, price", "price", "author", "title", None),
    ("visits", "id, user_id, page, duration_seconds, visited_at", "duration_seconds", "page",
     "page", "visited_at"),
    ("flights", "id, origin, destination, seats_sold, departs_at", "seats_sold", "origin",
     "destination", "departs_at"),
    ("students", "id, name, class_name, score", "score", "class_name", "name", None),
    ("rentals", "id, bike_id, customer_id, minutes, started_at", "minutes", "bike_id",
     "customer_id", "started_at"),
    ("reviews", "id, product_id, rating, comment, posted_at", "rating", "product_id", "comment",
     "posted_at"),
)
SQL_TASKS = (
    "returns the {k} rows with the highest {num}", "computes the average {num} for each {group}",
    "counts the rows for each {group}, largest count first", "finds duplicate values of {text}",
    "returns the rows whose {num} is above the overall average",
    "lists each {group} with its total {num}, sorted in descending order",
    "returns the minimum and maximum {num} per {group}",
    "returns every {group} that has more than {k} rows",
)
SQL_DATE_TASKS = (
    "counts the rows per month using {date}",
    "returns the rows from the last {days} days based on {date}",
    "deletes rows where {date} is older than one year",
)
SQL_TEMPLATES = (
    "Write a SQL query that {task} from a table {table}({cols}).",
    "Given a table {table}({cols}), write a SQL query that {task}.",
    "Write a SQL query on {table}({cols}) that {task}, and explain how it works.",
    "I have a table {table}({cols}). Which SQL query {task}?",
)
BASH_TASKS = (
    "count the {ext} files in {dir}", "find all {ext} files in {dir} larger than {size} MB",
    "replace the word 'draft' with 'final' in every {ext} file in {dir}",
    "show the ten largest files under {dir}",
    "print the lines containing 'ERROR' in app.log together with their line numbers",
    "rename every .jpeg file in {dir} to .jpg", "count the unique IP addresses in access.log",
    "delete files older than {days} days in {dir}",
    "archive {dir} into a tar.gz file named after today's date",
    "show the disk usage of each subdirectory of {dir}, sorted by size",
    "find which process is listening on port {port}",
    "print the last {k} lines of a log file as it grows",
    "list the {ext} files in {dir} modified in the last {days} days",
    "count the lines of all {ext} files in {dir} together",
    "extract the second column of a comma-separated file and sort it uniquely",
    "convert all file names in {dir} to lowercase",
)
BASH_TEMPLATES = (
    "Write a bash one-liner that {task:s}.", "Write a short bash script that {task:s}.",
    "How can I {task} from the command line?", "Give me a shell command to {task}.",
)
BASH_EXTS = (".py", ".md", ".txt", ".csv", ".json", ".log", ".yaml", ".html")
BASH_DIRS = ("the current directory", "~/projects", "src/", "/var/log", "~/Downloads", "./data")
BUG_INTROS = (
    "There is a bug in this Python code. Find it, fix it, and explain what was wrong:",
    "This function does not do what I expect. What is wrong with it?",
    "Why does this code give the wrong result? Suggest a fix.",
    "Debug this Python snippet and explain the problem:",
    "Find and fix the mistake in this code:",
    "My code is not working. Can you help me fix it?",
    "Review this code, point out the bug and give a corrected version:",
)
REFACTOR_INTROS = (
    "Rewrite this loop as a list comprehension:", "Make this Python code more Pythonic:",
    "Refactor this code to make it shorter and clearer:", "Simplify this Python snippet:",
    "Can you rewrite this using a comprehension or a built-in function?",
    "Improve the readability of this code without changing what it does:",
)
EXPLAIN_INTROS = (
    "What does this Python code do? Explain it line by line.",
    "What will this code print, and why?",
    "Explain this snippet to a beginner:", "Walk me through what this function does:",
    "Add comments to this code that explain each step:",
    "What is the time complexity of this code? Explain.",
)
TEST_INTROS = (
    "Write pytest tests for this function:", "Write unit tests for the following code:",
    "Suggest test cases, including edge cases, for this function:",
)
VAR_NAMES = ("values", "items", "numbers", "data", "scores", "prices", "counts", "readings")

# --- qa -------------------------------------------------------------------------------------------
FACT_QUESTIONS = (
    "What is the largest planet in the solar system?", "Who painted the Mona Lisa?",
    "How many bones are there in the adult human body?", "What is the chemical symbol for gold?",
    "Which ocean is the largest on Earth?",
    "How many continents are there, and what are they called?",
    "What is the freezing point of water in Fahrenheit?", "Who wrote the play 'Romeo and Juliet'?",
    "What is the tallest mountain on Earth, and how high is it?",
    "Who is credited with inventing the telephone?",
    "Which gas do plants take in from the air to make food?",
    "What is the longest river in South America?",
    "How many players does a football team have on the pitch?",
    "What is the hardest natural substance?",
    "Who was the first person to walk on the Moon?", "What is the smallest prime number?",
    "How long does it take the Earth to orbit the Sun?",
    "What is the main gas in the Earth's atmosphere?",
    "Which planet is known as the Red Planet, and why?",
    "Who developed the theory of general relativity?",
    "What is the largest desert in the world?", "How many sides does a hexagon have?",
    "Which organ pumps blood around the human body?", "What is the speed of light, roughly?",
    "Who composed the 'Moonlight Sonata'?", "In which country are the pyramids of Giza?",
    "What is the square root of 144?", "Which metal is liquid at room temperature?",
    "How many hours are there in a week?", "Which animal is the largest mammal on Earth?",
    "What does DNA stand for?", "Who discovered penicillin, and when?",
    "What is the most spoken language in the world by native speakers?",
    "What are the three primary colours of light?", "Which element has the atomic number 1?",
    "How many minutes are there in a day?", "What is the capital city of Canada?",
    "Who wrote 'One Hundred Years of Solitude'?",
    "What is the largest internal organ of the human body?",
    "How far is the Moon from the Earth, approximately?", "Why did the Titanic sink?",
    "What does a thermometer measure?", "What is the boiling point of water in Kelvin?",
)
CONCEPTS = (
    "photosynthesis", "inflation", "a black hole", "compound interest", "machine learning",
    "a hash function", "recursion", "the greenhouse effect", "supply and demand", "an API",
    "DNS", "a vaccine", "plate tectonics", "the immune system", "a blockchain", "gravity",
    "encryption", "a stock market index", "a neural network", "version control",
    "natural selection", "a database index", "cloud computing", "a recession",
    "the placebo effect", "opportunity cost", "entropy", "binary search", "an operating system",
    "network latency", "caching", "a compiler", "the Doppler effect", "osmosis", "a food chain",
    "the scientific method", "a carbon footprint", "a mortgage", "an electric circuit",
    "the water table", "a leap year", "a time zone", "a solar eclipse", "antibiotic resistance",
    "a credit score", "a hypothesis", "an ecosystem", "the Pythagorean theorem", "a prime number",
    "a watershed", "a microchip", "nuclear fusion", "a sonnet", "a tariff", "a firewall",
)
DIFF_PAIRS = (
    ("a virus", "a bacterium"), ("RAM", "disk storage"), ("a list", "a tuple in Python"),
    ("TCP", "UDP"), ("an alligator", "a crocodile"), ("a simile", "a metaphor"),
    ("speed", "velocity"), ("mass", "weight"), ("'affect'", "'effect'"),
    ("baking soda", "baking powder"), ("a comet", "an asteroid"), ("HTTP", "HTTPS"),
    ("a loan", "a grant"), ("an epidemic", "a pandemic"), ("SQL", "NoSQL databases"),
    ("a process", "a thread"), ("git merge", "git rebase"), ("a stock", "a bond"),
    ("a hurricane", "a tornado"), ("empathy", "sympathy"), ("an element", "a compound"),
    ("a debit card", "a credit card"), ("a frog", "a toad"), ("a latte", "a cappuccino"),
    ("renewable", "non-renewable energy"), ("a compiler", "an interpreter"),
    ("a recession", "a depression"), ("heat", "temperature"), ("a fruit", "a vegetable"),
    ("a sprain", "a strain"), ("a sea", "an ocean"), ("a republic", "a monarchy"),
    ("a meteor", "a meteorite"), ("an atom", "a molecule"), ("a port", "an IP address"),
    ("a rabbit", "a hare"), ("a crown", "a filling at the dentist"), ("an essay", "a report"),
    ("a CPU", "a GPU"), ("a bug", "a feature request"), ("a lake", "a reservoir"),
)
PHENOMENA = (
    "ice float on water", "the Moon have phases", "bread rise", "we have seasons",
    "metal feel colder than wood", "the sea taste salty", "onions make people cry", "cats purr",
    "thunder come after lightning", "the ocean have tides", "soap remove grease",
    "our ears pop on a plane", "stars twinkle", "popcorn pop", "a compass point north",
    "the sky turn red at sunset", "we get goosebumps", "hair turn grey with age",
    "bubbles form in a glass of soda", "planes leave white trails in the sky",
)
PEOPLE = (
    "Marie Curie", "Ada Lovelace", "Leonardo da Vinci", "Nelson Mandela", "Isaac Newton",
    "Frida Kahlo", "Alan Turing", "Mahatma Gandhi", "Galileo Galilei", "Rosalind Franklin",
    "Wolfgang Amadeus Mozart", "Charles Darwin", "Cleopatra", "Nikola Tesla", "Jane Austen",
    "Confucius", "Florence Nightingale", "Ibn Battuta", "Grace Hopper", "Pablo Picasso",
)
HISTORY_EVENTS = (
    "the French Revolution", "the fall of the Roman Empire", "the Renaissance",
    "the Industrial Revolution", "the Cold War", "the Space Race", "the Black Death",
    "the invention of the printing press", "the Gold Rush in California", "the Reformation",
    "the first voyage around the world", "the building of the Suez Canal", "the Meiji Restoration",
)
BOOKS = (
    "Don Quixote", "War and Peace", "The Odyssey", "Moby-Dick", "Frankenstein", "Jane Eyre",
    "The Little Prince", "Crime and Punishment", "The Great Gatsby", "Nineteen Eighty-Four",
    "Things Fall Apart", "The Hobbit", "To Kill a Mockingbird", "Les Misérables",
)
# Explanatory questions: these also take an answer-shape hint ("Keep it short.", ...).
QA_TEMPLATES = (
    "What is {concept}?", "Explain {concept} in simple terms.", "How does {concept} work?",
    "Why is {concept} important?", "Give a short definition of {concept} and one example.",
    "What is the difference between {pair_a} and {pair_b}?",
    "How is {pair_a} different from {pair_b}?",
    "Briefly compare {pair_a} and {pair_b}.", "Why does {phenomenon}?",
    "Who was {person}, and what are they known for?", "What was {history}, and why did it matter?",
    "When did {history} happen, and what caused it?",
)
# Short factual questions, asked plainly.
QA_FACT_TEMPLATES = (
    "Who wrote '{book}', and what is it about?", "What is the capital of {country}?",
    "What currency is used in {country}?", "Which languages are spoken in {country}?",
    "What is {country} known for?",
    "On which continent is {country}, and which countries border it?",
)

# --- math -----------------------------------------------------------------------------------------
MATH_SUFFIXES = (
    "Explain step by step.", "Show your reasoning.", "Show your work.",
    "Walk me through the steps.",
    "Explain how you got the answer.", "Think it through step by step.", "Please show each step.",
    "Explain your working briefly.", "",
)
SHOP_ITEMS = ("notebooks", "apples", "muffins", "bus tickets", "light bulbs", "candles",
              "postcards", "batteries", "tennis balls", "cupcakes", "stickers", "bread rolls")
PRICED_ITEMS = ("a jacket", "a laptop", "a bicycle", "a pair of shoes", "a coffee machine",
                "a backpack", "a tent", "a desk lamp", "a board game", "a winter coat")
CURRENCIES = ("dollars", "euros", "pounds")
VEHICLES = ("train", "cyclist", "car", "bus", "runner", "ferry", "delivery van", "hiker")

# --- json -----------------------------------------------------------------------------------------
JSON_ENTITIES: dict[str, tuple[str, ...]] = {
    "person": ("name", "age", "city", "occupation", "email", "hobbies"),
    "book": ("title", "author", "year", "genre", "pages"),
    "movie": ("title", "director", "year", "rating", "runtime_minutes"),
    "product": ("name", "price", "currency", "in_stock", "category"),
    "recipe": ("name", "servings", "ingredients", "prep_time_minutes", "vegetarian"),
    "company": ("name", "founded", "employees", "headquarters", "industry"),
    "city": ("name", "country", "population", "famous_for"),
    "car": ("make", "model", "year", "color", "mileage_km"),
    "pet": ("name", "species", "age", "breed", "vaccinated"),
    "event": ("title", "date", "location", "attendees", "price"),
    "university course": ("title", "instructor", "credits", "weekday", "room"),
    "laptop": ("brand", "ram_gb", "storage_gb", "price", "weight_kg"),
    "restaurant": ("name", "cuisine", "rating", "address", "open_on_sundays"),
    "hotel booking": ("guest_name", "check_in", "check_out", "room_type", "total_price"),
    "song": ("title", "artist", "album", "duration_seconds", "release_year"),
    "employee": ("id", "full_name", "department", "start_date", "manager"),
}
JSON_COLLECTIONS: dict[str, tuple[str, ...]] = {
    "fruits": ("name", "colour", "season"), "vegetables": ("name", "colour", "calories"),
    "countries": ("name", "capital", "continent"), "planets": ("name", "moons", "order_from_sun"),
    "programming languages": ("name", "year_created", "typing"),
    "famous painters": ("name", "country", "famous_work"),
    "cities": ("name", "country", "population"),
    "animals": ("name", "habitat", "diet"), "musical instruments": ("name", "family", "origin"),
    "board games": ("name", "players", "playing_time_minutes"),
    "chemical elements": ("name", "symbol", "atomic_number"),
    "rivers": ("name", "length_km", "continent"),
    "dog breeds": ("name", "size", "origin"), "desserts": ("name", "country", "main_ingredient"),
}
JSON_TEMPLATES = (
    "Create a JSON object for a fictional {entity} with the keys {keys}. Output only the JSON.",
    "Give me a JSON object describing a made-up {entity}, using the fields {keys}. Respond with "
    "JSON only.",
    "Generate sample data for one {entity} as JSON with these keys: {keys}. No explanation, just "
    "JSON.",
    "Write a JSON array with {n} fictional {entity_plural}, each with the keys {keys}. Return only "
    "the JSON.",
    "List {n} {collection} as a JSON array of objects, each with the keys {ckeys}. Only output "
    "JSON.",
    "Give {n} {collection} in JSON: an array of objects with the fields {ckeys}. No other text.",
    "Return a JSON array with the names of {n} {collection}. Return only the JSON.",
    "Convert these details into a JSON object:\n{details}",
    "Turn the following information into valid JSON. Output nothing else.\n\n{details}",
)

# --- translate ------------------------------------------------------------------------------------
# Everyday sentences in English; generated variety comes from the slots.
SENTENCES = (
    "{name} is going to {city} next {day} to visit an old friend.",
    "We will meet in front of the {building} at {clock} on {day}.",
    "I would like to book a table for {num} people on {day} evening.",
    "Could you tell me where the nearest {building} is?",
    "The {thing} costs {price} euros, but it is cheaper this week.",
    "My {relative} lives in {city} and works as a {job}.",
    "The train to {city} leaves at {clock} from platform {num}.",
    "Please do not forget to water the plants while I am away.",
    "The {building} is closed on {day} because of a public holiday.",
    "I have been learning to cook for {num} months and I really enjoy it.",
    "Can we move our meeting from {day} to {day2}?",
    "It rained all morning, so we stayed inside and played cards.",
    "{name} left an umbrella on the bus this morning.",
    "The doctor said I should drink more water and sleep at least eight hours.",
    "Our flight was delayed by {num} hours, so we missed the connection to {city}.",
    "I am sorry, but I do not understand. Could you speak more slowly?",
    "The children are playing in the garden while their parents prepare dinner.",
    "This {thing} was a present from my {relative} for my birthday.",
    "We are looking for a quiet hotel near the {building}.",
    "If the weather is nice on {day}, we will go for a walk by the river.",
    "The new {building} opens on {day} at {clock}.",
    "How much does a return ticket to {city} cost?",
)
BUILDINGS = ("museum", "train station", "post office", "pharmacy", "town hall", "bakery",
             "cinema", "hospital", "supermarket", "bus stop", "swimming pool", "bank")
THINGS = ("lamp", "jacket", "bicycle", "teapot", "blue dress", "guitar", "backpack", "watch",
          "painting", "camera")
TRANSLATE_TEMPLATES = (
    "Translate into {lang}: '{sentence}'", "Translate this sentence into {lang}:\n\n{sentence}",
    "How do you say '{sentence}' in {lang}?",
    "Please translate the following into {lang}: \"{sentence}\"",
    "What is the {lang} translation of: '{sentence}'",
    "Translate to {lang}, keeping a polite tone: '{sentence}'",
    "Give me the {lang} version of this sentence, and nothing else: {sentence}",
    "Translate '{sentence}' into {lang} and into {lang2}.",
    "Can you translate this into informal {lang}? '{sentence}'",
)

# --- multi (stage A): two-part requests and short scripted conversations --------------------------
MULTI_TEMPLATES = (
    "Write a {poem} about {poem_topic}, then explain its imagery in one sentence.",
    "List {n} ideas for {occasion}, then pick the best one and explain why.",
    "Explain {concept} in one sentence, then give a real-world example.",
    "Write a Python function to {task}, then show two example calls with their output.",
    "Give me {n} tips for {activity}, then summarise them in a single sentence.",
    "Suggest a title for a blog post about {topic}, then write its first sentence.",
    "Name {n} interesting facts about {topic}, then say which one surprises people most.",
    "Translate '{sentence}' into {lang}, then explain any words that might be tricky.",
    "Define {concept} for a beginner, and then write one quiz question about it.",
    "First explain what {pair_a} and {pair_b} have in common, then how they differ.",
)
# (first user turn, the assistant's short reply, the follow-up)
CONVERSATIONS = (
    ("Can you suggest a name for my new kitten?",
     "Of course! How about Pepper? It is short, easy to call, and suits a lively kitten.",
     "Nice. Give me {n} more options with a short reason for each."),
    ("I'm planning a trip to {city}. Any advice?",
     "Happy to help. How many days will you stay, and do you prefer museums, food or the outdoors?",
     "{num} days, and I mostly like food and long walks."),
    ("What is {concept}?",
     "Good question. Would you like a quick overview or a more detailed explanation?",
     "A quick overview, please, with one everyday example."),
    ("I want to start {activity}.",
     "That's a great goal. Do you want a plan for the first week, or general tips?",
     "A plan for the first week, please."),
    ("Can you help me write an email?",
     "Sure. Who is it for, and what should the email say?",
     "It's for {recipient}, thanking them for {reason}. Keep it short."),
    ("How do I {howto}?",
     "I can walk you through it. Do you have any tools or ingredients ready, or are you starting "
     "from scratch?",
     "Starting from scratch. Please keep the steps simple."),
    ("I need a Python function to {task}.",
     "Sure. Should it handle edge cases like empty input, and do you want type hints?",
     "Yes to both, and please add a docstring."),
    ("Tell me a little about {topic}.",
     "Gladly. Are you curious about its history, how it works, or why it matters today?",
     "Why it matters today, in a few sentences."),
    ("Can you recommend a book?",
     "Sure! What kind of books do you usually enjoy?",
     "I like stories about {topic}. Something not too long."),
    ("I feel {feeling} about {situation}.",
     "That's understandable, and many people feel the same. What worries you most about it?",
     "Mostly that I won't be prepared in time. What can I do this week?"),
    ("What is {pct}% of {amount}?",
     "{pct}% of {amount} is {pct_value}.",
     "And how much is left after taking that away? Show the steps."),
    ("Can you give me a dinner idea for tonight?",
     "How about a quick vegetable stir-fry with rice? It takes about twenty minutes.",
     "Sounds good. What ingredients do I need for {num} people?"),
)

# --- stage B: requests built on passages the target wrote -----------------------------------------
TONES = ("more formal", "friendlier", "more casual", "more neutral", "more enthusiastic",
         "more polite", "more professional", "warmer", "more confident", "more persuasive")
READERS = ("a ten-year-old", "a busy executive", "someone who is learning English",
           "a teenage audience", "readers of a company newsletter", "a radio announcement",
           "an expert audience", "a social media post")
REWRITE_TEMPLATES = (
    "Rewrite the following text in a {tone} tone:\n\n{passage}",
    "Make this text {tone}, but keep all the information:\n\n{passage}",
    "Rewrite this for {reader}:\n\n{passage}",
    "Make this text more concise. Aim for about half the length.\n\n{passage}",
    "Paraphrase the following paragraph in your own words:\n\n{passage}",
    "Rewrite this text as a bulleted list:\n\n{passage}",
    "Rewrite this paragraph with simpler words and shorter sentences:\n\n{passage}",
    "Improve the flow of this text without changing its meaning:\n\n{passage}",
    "{passage}\n\nRewrite the text above so that it sounds {tone}.",
)
SENTENCE_REWRITE_TEMPLATES = (
    "Rephrase this sentence, keeping its meaning: {sentence}",
    "Give {n} different ways to say this sentence: {sentence}",
    "Rewrite this sentence in the passive voice, if that is possible: {sentence}",
    "Make this sentence shorter without losing information: {sentence}",
    "Rewrite this sentence so that it sounds {tone}: {sentence}",
)
GRAMMAR_TEMPLATES = (
    "Correct the grammar and spelling in this text. Return only the corrected text.\n\n{broken}",
    "Fix the mistakes in this paragraph:\n\n{broken}",
    "Proofread this text, then list the errors you corrected:\n\n{broken}",
    "Please fix the grammar in this sentence: {broken_sentence}",
    "Can you correct this text? Keep the wording as close to the original as possible.\n\n{broken}",
)
SUMMARY_TEMPLATES = (
    "Summarize this text in two sentences:\n\n{passage}",
    "Summarize the following in one sentence:\n\n{passage}",
    "Give me a {n}-point bulleted summary of this text:\n\n{passage}",
    "Write a one-line headline for this text:\n\n{passage}",
    "What is the main idea of this paragraph?\n\n{passage}",
    "Summarize this for a busy reader in under {limit} words:\n\n{passage}",
    "Give a TL;DR of the following text:\n\n{passage}",
    "Condense this text into a short paragraph:\n\n{passage}",
    "Summarize the text below for a child:\n\n{passage}",
    "{passage}\n\nSummarize the text above in {n} sentences.",
)
EMAIL_SUMMARY_TEMPLATES = (
    "Summarize the main points of this email:\n\n{passage}",
    "What does the sender of this email want? Summarize briefly.\n\n{passage}",
    "List the action items in this message:\n\n{passage}",
)
PAIR_SUMMARY_TEMPLATES = (
    "Summarize these two texts together in one paragraph.\n\nText 1:\n{passage}\n\nText 2:\n"
    "{passage2}",
    "Give a two-sentence summary of each of these texts.\n\nFirst text:\n{passage}\n\nSecond text:"
    "\n{passage2}",
)
RAG_TEMPLATES = (
    "Answer the question using only the information in the context.\n\nContext: {context}\n\n"
    "Question: {question}",
    "Context:\n{context}\n\nBased only on the context above, answer this question: {question}",
    "Read the passage and answer the question. If the passage does not contain the answer, say so."
    "\n\nPassage: {context}\nQuestion: {question}",
    "Here is some background information:\n{context}\n\nUsing this information only, answer: "
    "{question}",
    "Use the context to answer the question.\nContext: {context}\nQuestion: {question}",
    "Using only the context below, answer the question in one or two sentences.\nContext: {context}"
    "\nQuestion: {question}",
    "Document:\n{context}\n\nQuestion: {question}\nAnswer from the document, and quote the "
    "sentence that supports your answer.",
    "You are given a text and a question. Answer the question from the text only.\n\nText: "
    "{context}\n\nQuestion: {question}",
)
RAG_QUESTIONS = (
    "What is the text mainly about?", "What are the key facts it mentions?",
    "What does it say about {kw}?", "Why is {kw} mentioned?",
    "What can you learn about {kw} from it?",
    "Which people or places are mentioned, and in what role?",
    "What does it say about {other}?", "Is {kw} mentioned, and if so, what is said about it?",
    "In one sentence, what does the text say about {kw}?",
    "What advice or recommendation does the text give, if any?",
    "How are {kw} and {kw2} connected in the text?",
)
RAG_NUMBER_QUESTIONS = ("What does {num} refer to in the text?",
                        "What is the significance of {num} in the text?")
RAG_UNRELATED = ("the price of train tickets", "the opening hours", "the weather forecast",
                 "the author's age", "the population of Canada", "the colour of the building")
EXTRACT_KEYS = ("topic", "people", "places", "dates", "numbers", "summary", "keywords", "sentiment",
                "organisations", "action_items")
EXTRACT_TEMPLATES = (
    "Extract the main information from this text as a JSON object with the keys {keys}. Return "
    "only the JSON.\n\n{passage}",
    "Read the text below and return a JSON object with the keys {keys}. Output only JSON.\n\nText: "
    "{passage}",
    "List every person and place mentioned in this text as JSON with the keys \"people\" and \""
    "places\". Only output JSON.\n\n{passage}",
    "Return the key facts of this passage as a JSON array of short strings, and nothing else.\n\n"
    "{passage}",
    "Turn this text into JSON with a title, a one-sentence summary and a list of keywords.\n\n"
    "{passage}",
    "Extract every number in the text, with what it refers to, as a JSON array of objects with the "
    "keys 'value' and 'meaning'. Return only the JSON.\n\n{passage}",
)
DERIVED_TRANSLATE_TEMPLATES = (
    "Translate this short text into {lang}:\n\n{excerpt}",
    "Translate the following paragraph into {lang}, keeping the tone:\n\n{excerpt}",
)
DERIVED_MULTI_TEMPLATES = (
    "Summarize this text in one sentence, then suggest a title for it.\n\n{passage}",
    "Read the text below. First list its main points, then write one question a reader might ask.\n"
    "\n{passage}",
    "Translate the first sentence of this text into {lang}, then summarize the rest in English.\n\n"
    "{passage}",
    "Rewrite this text in a {tone} tone, then explain what you changed.\n\n{passage}",
    "Give this text a title, then list three keywords for it.\n\n{passage}",
)
FOLLOWUPS = (
    "Make it about half as long.", "Now turn it into three bullet points.",
    "Give it a catchy title.",
    "Rewrite the last sentence to sound more upbeat.", "Translate the first sentence into {lang}.",
    "What is the main point, in one sentence?",
    "Write two questions a reader might ask after reading it.",
    "Make it suitable for a ten-year-old.", "Write a short, polite reply to it.",
    "Make the tone {tone}.",
    "Fix any grammar mistakes and give me the corrected version.",
    "Which sentence matters most, and why?",
)
# (first user turn, assistant turn) around a passage; the follow-up comes from FOLLOWUPS.
PASSAGE_CONVERSATIONS = (
    ("Here is a draft I wrote:\n\n{passage}\n\nCan you take a look?",
     "I've read it. It is clear and well organised, and the main point comes across. Would you "
     "like me to "
     "shorten it, change the tone, or check the grammar?"),
    ("Write a short paragraph I could use as a reading exercise.", "{passage}"),
    ("Can you give me a short sample text of about a hundred words?", "{passage}"),
    ("Please read this text:\n\n{passage}", "Done. What would you like me to do with it?"),
    ("Summarize this text in one sentence:\n\n{passage}", "{lead}"),
)

# --- answer-shape hints and other small lists used by the generators in prompts.py ---------------
# Optional hints appended to requests: held-out prompts ask for lengths and formats too.
QA_SHAPES = ("", "", " Keep it short.", " Answer in two or three sentences.", " Give an example.",
             " Explain it to a beginner.", " Use a simple analogy.", " Answer in one paragraph.")
CODE_SHAPES = ("", "", " Use only the standard library.", " Add a couple of comments.",
               " Avoid one-letter variable names.")
UNIT_CONVERSIONS = (
    ("kilometres", "miles"), ("miles", "kilometres"), ("kilograms", "pounds"),
    ("degrees Celsius", "degrees Fahrenheit"), ("degrees Fahrenheit", "degrees Celsius"),
    ("litres", "millilitres"), ("hours", "minutes"), ("centimetres", "inches"), ("feet", "metres"))
BROKEN_JSON_INTROS = ("This JSON is invalid. Fix it and return only the corrected JSON:",
                      "Why is this not valid JSON? Give the corrected version.",
                      "My parser rejects this JSON. What is wrong, and what should it be?")
# (pattern, replacement) for grammar-correction prompts; None lowercases the match (day names).
GRAMMAR_ERRORS = (
    (r"\btheir\b", "there"), (r"\bthere\b", "their"), (r"\bit's\b", "its"), (r"\bits\b", "it's"),
    (r"\bdoesn't\b", "don't"), (r"\bwere\b", "was"), (r"\bhas\b", "have"), (r"\ban\b", "a"),
    (r"\btoo\b", "to"), (r"\bthan\b", "then"), (r"\byour\b", "you're"), (r"\bthe\b", "teh"),
    (r"\bbecause\b", "becuase"), (r"\bwhich\b", "witch"), (r"\bare\b", "is"),
    (r"\breceive\b", "recieve"), (r"\bseparate\b", "seperate"), (r"\bdoes\b", "do"),
    (r"\b(Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)\b", None))
